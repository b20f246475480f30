"""`berth explain <container-id | hostPort | ip:port> [--json]`: why does (or
doesn't) traffic reach this container?

Walks the path an inbound packet to a published port takes on this node and
says at each hop whether it is in place:

  journal     the ADD finished (bridge and portmap sections)
  ports       no other attachment's journal claims the same hostIP/proto/port
  listener    no socket of the node's own (a host service) listens on the port
  table       table inet berth with its base chains, maps and their rules
  hostport    the verdict-map element hostport -> CNI-DN-<hash>
  dnat        chain CNI-DN-<hash> with its rules, and how many packets it DNAT'ed
  forward     net.ipv4.ip_forward, and a foreign FORWARD policy (table ip filter,
              where iptables-nft keeps it) that would drop the forwarded packet
  bridge      the bridge exists and is up
  veth        the host veth is up and attached to the bridge
  container   the container interface is up and holds its address
  masquerade  hairpin/localhost marks (portmap) and ipMasq rule/elements (bridge)
  localhost   route_localnet on the bridge and the 127/8 guard (CVE-2020-8558)
  proxy       [::1]:hostPort: berth's userland proxy holds the port (its socket's cookie)
  conntrack   how many conntrack entries exist for the port

and ends with a one-line verdict. Read-only: nothing is ever changed; the only
tables listed are berth's own and `ip filter` (iptables-legacy rules live
outside nftables and are not visible).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from cni import sysctl
from cni.ops import view as ops_view
from cni.records import Attachment, PortMapping
from portmap import conntrack, diff, layout
from portmap.diff import Ownership, Table

OK, FAIL, WARN, INFO = "ok", "fail", "warn", "info"


@dataclass
class Hop:
    name: str
    status: str
    detail: str


@dataclass
class Report:
    attachment: str
    network: str
    container_id: str
    ifname: str
    ports: list[str]
    hops: list[Hop] = field(default_factory=list)
    verdict: str = ""

    @property
    def broken(self) -> bool:
        return any(h.status == FAIL for h in self.hops)

    def add(self, name: str, status: str, detail: str) -> None:
        self.hops.append(Hop(name, status, detail))


# --- targets --------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    text: str
    container: str | None = None
    port: int | None = None
    host_ip: str | None = None

    def covers(self, m: PortMapping) -> bool:
        if self.port is None:
            return True
        if not m.host_lo <= self.port <= m.host_hi:
            return False
        return self.host_ip is None or m.host_ip in ("", self.host_ip)


def parse_target(text: str) -> Target:
    """`8080`, `198.51.100.1:8080`, `[fd00::1]:8080`, or a container ID (or a unique prefix)."""
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit():
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and 1 <= int(port) <= 65535:
            return Target(text, port=int(port), host_ip=None if ip.is_unspecified else ip.compressed)
    if text.isdigit() and 1 <= int(text) <= 65535:
        return Target(text, port=int(text))
    return Target(text, container=text)


def select(attachments: list[Attachment], target: Target) -> tuple[list[Attachment], str | None]:
    """The attachments a target names, or an error message."""
    if target.container is not None:
        exact = [a for a in attachments if a.container_id == target.container]
        if exact:
            return exact, None
        prefixed = [a for a in attachments if a.container_id.startswith(target.container)]
        ids = sorted({a.container_id for a in prefixed})
        if len(ids) > 1:
            return [], f"{target.text!r} is ambiguous: {', '.join(ids[:5])}"
        if not prefixed:
            return [], f"no attachment of container {target.text!r} on this node"
        return prefixed, None
    found = [a for a in attachments if any(target.covers(m) for m in a.mappings)]
    if not found:
        return [], f"no attachment on this node publishes {target.text}"
    return found, None


# --- read-only probes -------------------------------------------------------------

def foreign_forward() -> tuple[list[dict[str, Any]], str | None]:
    """Forward-hook chains of `table ip filter` (iptables-nft's FORWARD) with their
    policy and verdict counts; ([], None) when the table does not exist."""
    from portmap import nft

    objects = nft.list_foreign("ip", "filter")  # read-only, this one well-known table
    if objects is None:
        return [], None
    chains = []
    for obj in objects:
        chain = obj.get("chain")
        if isinstance(chain, dict) and chain.get("hook") == "forward":
            chains.append({"name": chain.get("name"), "policy": chain.get("policy", "accept"),
                           "accept": 0, "drop": 0, "rules": 0})
    for obj in objects:
        rule = obj.get("rule")
        if not isinstance(rule, dict):
            continue
        for chain in chains:
            if rule.get("chain") == chain["name"]:
                chain["rules"] += 1
                verdicts = {k for e in rule.get("expr") or [] if isinstance(e, dict) for k in e}
                chain["accept"] += "accept" in verdicts
                chain["drop"] += bool(verdicts & {"drop", "reject"})
    return chains, None




# --- the walk -------------------------------------------------------------------------

@dataclass
class Context:
    root: str
    attachments: list[Attachment]
    table: Table
    view: Ownership
    forward_chains: list[dict[str, Any]]
    node: Any = None  # cni.netlink.Handle of this (the node's) namespace, or None
    sockets: list[Any] = field(default_factory=list)  # portmap.sockdiag.Socket on the explained ports
    processes: dict[int, str] = field(default_factory=dict)  # their inode -> "name (pid N)"
    sockets_problem: str = ""  # why the host's sockets could not be read


def explain(att: Attachment, target: Target, ctx: Context) -> Report:
    focus = [m for m in att.mappings if target.covers(m)]
    report = Report(att.describe(), att.network, att.container_id, att.ifname,
                    [diff.format_mapping(m) for m in focus])
    _journal_hop(report, att)
    _ports_hop(report, att, focus, ctx)
    _listener_hop(report, att, focus, ctx)
    _table_hops(report, att, focus, ctx)
    _forward_hop(report, att, ctx)
    _link_hops(report, att, ctx)
    _masq_hop(report, att, focus, ctx)
    _isolation_hop(report, att, ctx)
    _localhost_hop(report, att, focus, ctx)
    _proxy_hop(report, att, focus, ctx)
    count, problem = conntrack.count(focus)
    if problem:
        report.add("conntrack", WARN, problem)
    elif focus:
        report.add("conntrack", INFO, f"{count} entr{'y' if count == 1 else 'ies'} for "
                   + ", ".join(f"{m.protocol}/{_ports(m)}" for m in focus))
    report.verdict = verdict(report, att, focus)
    return report


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _ports(m: PortMapping) -> str:
    return str(m.host_lo) if m.host_lo == m.host_hi else f"{m.host_lo}-{m.host_hi}"


def _journal_hop(report: Report, att: Attachment) -> None:
    parts = [name for name, sec in (("bridge", att.bridge), ("portmap", att.portmap)) if sec is not None]
    when = f", created {ops_view.age(att.created)} ago" if att.created else ""
    if att.complete():
        report.add("journal", OK, f"ADD complete ({' + '.join(parts) or 'no sections'}){when}: {att.path}")
    else:
        report.add("journal", FAIL, f"the ADD did not complete ({att.path}): DEL and re-ADD the container")


def _ports_hop(report: Report, att: Attachment, focus: list[PortMapping], ctx: Context) -> None:
    if not focus:
        report.add("ports", INFO, "no published ports" + (" match" if att.mappings else ""))
        return
    problems, shadows = [], []
    for m in focus:
        for other, om in ctx.view.rivals(att, m):
            problems.append(f"{diff.format_mapping(m)} is also claimed by {other.describe()} "
                            f"({diff.format_mapping(om)}, journal {other.path})")
        owner = ctx.view.claim_owner(m)
        if owner is not None and owner != att.key:
            problems.append(f"{diff.format_mapping(m)} is held by {owner[1]}/{owner[2]} on {owner[0]} "
                            "(its port file)")
        for other in ctx.attachments:
            if other.key != att.key and any(diff.overlaps(m, om) and om.host_ip != m.host_ip
                                            and "" in (om.host_ip, m.host_ip) for om in other.mappings):
                shadows.append(f"{diff.format_mapping(m)} overlaps {other.describe()} on another hostIP "
                               "(a specific hostIP wins over any)")
    if problems:
        report.add("ports", FAIL, "port conflict: " + "; ".join(dict.fromkeys(problems)))
    elif shadows:
        report.add("ports", WARN, "; ".join(dict.fromkeys(shadows)))
    else:
        report.add("ports", OK, "no other attachment claims " + ", ".join(diff.format_mapping(m) for m in focus))


def _listener_hop(report: Report, att: Attachment, focus: list[PortMapping], ctx: Context) -> None:
    """A host socket on a published port: the mapping takes its traffic (allowed only
    with hostListenerPolicy "allow")."""
    from portmap import listeners

    if not focus:
        return
    if ctx.sockets_problem:
        report.add("listener", WARN, f"host sockets not read: {ctx.sockets_problem}")
        return
    families = {ipaddress.ip_address(a).version for a in att.addresses if _is_ip(a)}
    proxied = att.portmap is not None and att.portmap.proxy is not None
    found = listeners.conflicts(focus, families, proxied, ctx.sockets, _proxy_cookies(ctx.attachments))
    if not found:
        report.add("listener", OK, "no host socket on " + ", ".join(diff.format_mapping(m) for m in focus))
        return
    report.add("listener", WARN, "; ".join(
        f"{_host_socket(s, ctx)}: {diff.format_mapping(m)} takes its traffic" for m, s in found))


def _proxy_cookies(attachments: list[Attachment]) -> frozenset[int]:
    """The sockets of berth's proxies: no host service."""
    return frozenset(c for a in attachments if a.portmap is not None and a.portmap.proxy is not None
                     for li in a.portmap.proxy.listeners for c in li.cookies)


def _proxy_hop(report: Report, att: Attachment, focus: list[PortMapping], ctx: Context) -> None:
    """[::1]:hostPort: berth's userland proxy (the kernel cannot DNAT ::1)."""
    from cni.records import PROXY_PROCESS
    from portmap import listeners

    proxy = att.portmap.proxy if att.portmap is not None else None
    ours = [m for m in focus if m.host_ip in ("", "::1") and m.protocol in listeners.PROXIED_PROTOCOLS]
    if not ours:
        return
    if proxy is None:
        report.add("proxy", INFO, "no [::1] proxy for " + ", ".join(diff.format_mapping(m) for m in ours)
                   + " (userlandProxy false, no ::1 on the node, or made by an older berth): [::1] does not answer")
        return
    shown = [li for li in proxy.listeners if any(li.protocol == m.protocol and li.host_lo <= m.host_hi
                                                 and m.host_lo <= li.host_hi for m in ours)]
    who = f"berth proxy pid {proxy.pid}" if proxy.mode == PROXY_PROCESS else "the agent's proxy service"
    if ctx.sockets_problem:
        report.add("proxy", WARN, f"{', '.join(li.describe() for li in shown)} by {who}: sockets not read")
        return
    present = frozenset(s.cookie for s in ctx.sockets if s.address == "::1")
    down = [li for li in shown if not li.cookies or not set(li.cookies) <= present]
    if down:
        report.add("proxy", FAIL, f"{', '.join(li.describe() for li in down)}: {who} does not hold the port "
                   "(berth reconcile starts it again)")
    elif shown:
        report.add("proxy", OK, f"{', '.join(li.describe() for li in shown)} served by {who}")
    else:
        report.add("proxy", INFO, "[::1] not proxied for " + ", ".join(diff.format_mapping(m) for m in ours)
                   + " (the ADD could not bind it: see its stderr)")


def _host_socket(sock: Any, ctx: Context) -> str:
    who = ctx.processes.get(sock.inode)
    return f"host socket {sock.describe()}" + (f" of {who}" if who else "")


def host_sockets(ports: dict[str, list[tuple[int, int]]]) -> tuple[list[Any], dict[int, str], str]:
    """The node's sockets on these ports, their processes, or why they could not be read."""
    from portmap import listeners, sockdiag

    try:
        sockets = sockdiag.bound(ports)
    except sockdiag.Unavailable as exc:
        return [], {}, str(exc.strerror or exc)
    return sockets, listeners.processes({s.inode for s in sockets}), ""


def _table_hops(report: Report, att: Attachment, focus: list[PortMapping], ctx: Context) -> None:
    table = ctx.table
    static = diff.static_problems(table)
    if static:
        report.add("table", FAIL, "; ".join(static) + " (berth reconcile restores it)")
    else:
        report.add("table", OK, f"table {layout.FAMILY} {layout.TABLE}: base chains, maps and their rules present")
    if not focus:
        return
    chain = diff.dnat_chain(att)
    bad = []
    for m in focus:
        name = diff.map_name(att, m)
        target = table.element_target(name, diff.map_key(att, m))
        if target is None:
            bad.append(f"map {name} has no element {_key_text(m)} (berth reconcile restores it)")
        elif target != chain:
            bad.append(f"map {name} element {_key_text(m)} jumps to {target}, not {chain}")
    if bad:
        report.add("hostport", FAIL, "; ".join(bad))
    else:
        report.add("hostport", OK, ", ".join(f"{diff.map_name(att, m)}: {_key_text(m)} -> {chain}" for m in focus))
    want = len(diff.expected_dnat_rules(att))
    lacking = diff.rules_missing(table, chain, diff.built_rules(diff.expected_dnat_rules(att), chain))
    if chain not in table.chains:
        report.add("dnat", FAIL, f"chain {chain} is missing (berth reconcile restores it)")
    elif lacking:
        report.add("dnat", FAIL, f"chain {chain} lacks {lacking} of its {want} rules"
                   + (" (flushed?)" if table.rule_count(chain) == 0 else "") + ": berth reconcile restores them")
    else:
        packets, octets = table.counters(chain)
        report.add("dnat", OK, f"chain {chain}: {table.rule_count(chain)} rules, DNAT'ed {_plural(packets, 'packet')} "
                   f"({octets} bytes) since it was (re)made")


def _key_text(m: PortMapping) -> str:
    return " . ".join(x for x in (m.host_ip, m.protocol, _ports(m)) if x)


def _forward_hop(report: Report, att: Attachment, ctx: Context) -> None:
    families = {ipaddress.ip_address(a).version for a in att.addresses if _is_ip(a)} or {4}
    problems, warnings = [], []
    if 4 in families and sysctl.read(*sysctl.IPV4_FORWARD) != "1":
        problems.append("net.ipv4.ip_forward is not 1")
    if 6 in families and sysctl.read(*sysctl.IPV6_FORWARD) != "1":
        problems.append("net.ipv6.conf.all.forwarding is not 1")
    for chain in ctx.forward_chains:
        where = f"chain {chain['name']} of table ip filter (iptables FORWARD)"
        if chain["policy"] == "drop" and not chain["accept"]:
            problems.append(f"{where} has policy drop and no accept rule: forwarded traffic is dropped")
        elif chain["policy"] == "drop":
            warnings.append(f"{where} has policy drop; {chain['accept']} of its {chain['rules']} rules accept: "
                            "make sure they cover the bridge or the container address")
        elif chain["drop"]:
            warnings.append(f"{where} has {chain['drop']} drop/reject rule(s)")
    note = " (iptables-legacy rules are not visible to berth)"
    if problems:
        report.add("forward", FAIL, "; ".join(problems + warnings) + note)
    elif warnings:
        report.add("forward", WARN, "; ".join(warnings) + note)
    else:
        report.add("forward", OK, "forwarding on; no foreign FORWARD drop in table ip filter" + note)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _link_hops(report: Report, att: Attachment, ctx: Context) -> None:
    from cni import netlink

    if att.bridge is None:
        report.add("bridge", INFO, "the interface was made by another plugin: links not checked")
        return
    if ctx.node is None:
        report.add("bridge", WARN, "netlink unavailable: links not checked")
        return
    name = att.bridge_name
    bridge = netlink.link_by_name(ctx.node, name)
    if bridge is None or bridge.kind != "bridge":
        report.add("bridge", FAIL, f"bridge {name} does not exist" if bridge is None else f"{name} is not a bridge")
    elif not bridge.up:
        report.add("bridge", FAIL, f"bridge {name} is down")
    else:
        report.add("bridge", OK, f"bridge {name} is up")
    veth_name = att.bridge.host_veth
    veth = netlink.link_by_name(ctx.node, veth_name) if veth_name else None
    if veth is None:
        report.add("veth", FAIL, f"host veth {veth_name or '?'} does not exist (container gone without a DEL?)")
    elif not veth.up:
        report.add("veth", FAIL, f"host veth {veth_name} is down")
    elif bridge is not None and veth.master != bridge.index:
        report.add("veth", FAIL, f"host veth {veth_name} is not attached to bridge {name}")
    else:
        report.add("veth", OK, f"host veth {veth_name} is up, port of {name}")
    _container_hop(report, att)


def _container_hop(report: Report, att: Attachment) -> None:
    from cni import netlink, netns

    if not att.netns:
        report.add("container", WARN, "no netns recorded")
        return
    try:
        with netlink.open_netns(att.netns) as cont:
            link = netlink.link_by_name(cont, att.ifname)
            have = netlink.addresses(cont, link.index) if link is not None else []
    except (netns.NetnsNotFound, netns.NotANetns):
        report.add("container", FAIL, f"netns {att.netns} is gone")
        return
    except netlink.NetlinkFailure as exc:
        report.add("container", WARN, f"cannot read {att.netns}: {exc}")
        return
    if link is None:
        report.add("container", FAIL, f"{att.ifname} does not exist in {att.netns}")
        return
    have_set = {str(ipaddress.ip_interface(a)) for a in have}
    lacking = [c for c in att.cidrs if str(ipaddress.ip_interface(c)) not in have_set]
    if not link.up:
        report.add("container", FAIL, f"{att.ifname} in {att.netns} is down")
    elif lacking:
        report.add("container", FAIL, f"{att.ifname} in {att.netns} lacks {', '.join(lacking)}")
    else:
        report.add("container", OK, f"{att.ifname} in {att.netns} is up with {', '.join(att.cidrs) or 'no address'}")


def _isolation_hop(report: Report, att: Attachment, ctx: Context) -> None:
    """Bridge `isolate`: the bridge in the isolation sets, and how much the chain dropped."""
    mode = att.bridge.isolate if att.bridge is not None else ""
    bridge = att.bridge.bridge if att.bridge is not None else ""
    if not mode or not bridge:
        return
    missing = [m.what for m in diff.isolation_missing(bridge, mode, ctx.table)]
    if mode == "strict":
        others = {a.bridge.bridge for a in ctx.attachments if a.bridge is not None and a.bridge.bridge}
        missing += [m.what for m in diff.strict_missing(others - {bridge}, ctx.table)]
    if missing:
        report.add("isolation", FAIL, "; ".join(missing) + " (berth reconcile restores it)")
        return
    packets, _ = ctx.table.counters(layout.ISOLATION_CHAIN)
    report.add("isolation", OK, f"isolate={mode}: {bridge} in the isolation sets; {layout.ISOLATION_CHAIN} "
               f"dropped {_plural(packets, 'packet')} between networks on this node (allow flows in CNI-ADMIN)")


def _masq_hop(report: Report, att: Attachment, focus: list[PortMapping], ctx: Context) -> None:
    problems: list[str] = []
    parts = []
    snat = att.portmap is not None and att.portmap.snat and bool(focus)
    if snat and att.portmap is not None:
        bit = att.portmap.mark_bit if att.portmap.mark_bit is not None else layout.DEFAULT_MASQ_BIT
        problems += [f"{p} (hairpin and localhost traffic is not masqueraded)"
                     for p in diff.mark_problems(ctx.table, bit)]
        parts.append("hairpin/localhost marks")
    if att.masq is not None:
        problems += [m.what for m in diff.masq_missing(att, ctx.table)]
        parts.append(ops_view.masq_description(att, ctx.table))
    if problems:
        report.add("masquerade", FAIL, "; ".join(problems) + ": berth reconcile restores it")
    elif parts:
        report.add("masquerade", OK, " and ".join(parts) + " in place")
    else:
        report.add("masquerade", INFO, "none configured")


def _localhost_hop(report: Report, att: Attachment, focus: list[PortMapping], ctx: Context) -> None:
    v4 = [m for m in focus if m.applies_to(4)] if any(_is_ip(a) and ":" not in a for a in att.addresses) else []
    bridge = att.bridge_name
    if not v4 or not bridge:
        report.add("localhost", INFO, "no IPv4 published port: 127.0.0.1 not involved")
        return
    value = sysctl.read("net", "ipv4", "conf", bridge, "route_localnet")
    guard = layout.GUARD_CHAIN in ctx.table.chains and not diff.rules_missing(
        ctx.table, layout.GUARD_CHAIN, diff.built_rules(layout.base_layout(), layout.GUARD_CHAIN))
    if value == "1" and not guard:
        report.add("localhost", FAIL, f"route_localnet=1 on {bridge} but the 127/8 guard chain is missing "
                   "(CVE-2020-8558 open): berth reconcile restores it")
    elif value != "1":
        snat = att.portmap is not None and att.portmap.snat
        report.add("localhost", WARN if snat else INFO,
                   f"route_localnet={value or '?'} on {bridge}: 127.0.0.1:{_ports(v4[0])} from the node will not work")
    else:
        report.add("localhost", OK, f"route_localnet=1 on {bridge}, 127/8 guard in place")


def verdict(report: Report, att: Attachment, focus: list[PortMapping]) -> str:
    for hop in report.hops:
        if hop.status == FAIL:
            return f"BROKEN at {hop.name}: {hop.detail}"
    dest = ", ".join(att.addresses) or "the container"
    what = ", ".join(diff.format_mapping(m) for m in focus) or "its traffic"
    warns = [h.name for h in report.hops if h.status == WARN]
    tail = f" (check: {', '.join(warns)})" if warns else ""
    return f"OK: {what} should reach {dest}{tail}"


# --- output ------------------------------------------------------------------------------

MARK = {OK: "ok  ", FAIL: "FAIL", WARN: "warn", INFO: "info"}


def render(reports: list[Report]) -> str:
    lines = []
    for report in reports:
        lines.append(f"{report.attachment}" + (f"  [{', '.join(report.ports)}]" if report.ports else ""))
        width = max(len(h.name) for h in report.hops)
        for hop in report.hops:
            lines.append(f"  {MARK.get(hop.status, hop.status)}  {hop.name.ljust(width)}  {hop.detail}")
        lines.append(f"  => {report.verdict}")
        lines.append("")
    return "\n".join(lines)


@contextlib.contextmanager
def _node_handle() -> Iterator[Any]:
    from cni import netlink

    try:
        handle = netlink.open_node()
    except Exception:
        yield None
        return
    with handle:
        yield handle


def run(root: str, target: Target) -> tuple[list[Report], str | None]:
    from portmap import listeners

    attachments = ops_view.load_attachments(root)
    chosen, error = select(attachments, target)
    if error:
        if target.port is not None:
            error += _host_listeners_of(target)
        return [], error
    focus = [m for att in chosen for m in att.mappings if target.covers(m)]
    sockets, processes, problem = host_sockets(listeners.wanted_ports(focus))
    table = diff.snapshot()
    forward, _ = foreign_forward()
    with _node_handle() as node:
        ctx = Context(root, attachments, table, Ownership(root, attachments), forward, node, sockets, processes,
                      problem)
        return [explain(att, target, ctx) for att in chosen], None


def _host_listeners_of(target: Target) -> str:
    """What explains a port no attachment publishes: the host sockets on it."""
    from portmap import listeners

    assert target.port is not None
    ports = {proto: [(target.port, target.port)] for proto in ("tcp", "udp", "sctp")}
    sockets, processes, problem = host_sockets(ports)
    if problem:
        return f" (host sockets not read: {problem})"
    if target.host_ip:
        dest = (6 if ":" in target.host_ip else 4, target.host_ip)
        sockets = [s for s in sockets if listeners.receives(s, dest)]
    if not sockets:
        return "; no host socket holds it either"
    return "; host " + "; ".join(f"socket {s.describe()}" + (f" of {processes[s.inode]}" if s.inode in processes
                                                             else "") for s in sockets)


def main(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"berth {command}",
        description="Walk the path a packet to a published port takes on this node and say, hop by hop, "
                    "whether it is in place; end with a one-line verdict. Read-only.",
        epilog="Hops: journal, ports (conflicts), listener (a host service on the port), table, hostport "
               "(verdict-map element), dnat (CNI-DN chain and its packet counter), forward (ip_forward, "
               "foreign FORWARD drop in table ip filter; iptables-legacy is not visible), bridge, veth, container, "
               "masquerade, localhost (route_localnet and the 127/8 guard), proxy ([::1]: the userland "
               "proxy holds the port), conntrack. Exit status: 0 all in place, 1 something is broken or nothing "
               "matches, 2 usage.",
    )
    parser.add_argument("target", help="container ID (or a unique prefix), hostPort (8080), or ip:port "
                                       "(198.51.100.1:8080, [fd00::1]:8080)")
    parser.add_argument("--json", action="store_true", help="print the hops as JSON")
    args = parser.parse_args(argv)
    from cni import state
    from cni.errors import CNIError

    target = parse_target(args.target)
    try:
        reports, error = run(state.state_root(), target)
    except CNIError as exc:
        error = f"{exc.msg}" + (f": {exc.details}" if exc.details else "")
        reports = []
    if args.json:
        out: dict[str, Any] = {"target": args.target, "error": error,
                               "attachments": [asdict(r) for r in reports],
                               "verdict": error or ("; ".join(r.verdict for r in reports))}
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
    elif error:
        sys.stdout.write(f"{args.target}: {error}\n")
    else:
        sys.stdout.write(render(reports))
    return 1 if error or any(r.broken for r in reports) else 0
